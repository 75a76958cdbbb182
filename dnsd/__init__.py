"""DNS for the lab: zones (pure), authoritative server kinds (Knot DNS, NSD) and recursive resolver kinds
(Unbound), each one of the lab's daemons."""
