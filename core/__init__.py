"""The ground floor: what every other package of anylab stands on; it imports nothing else of the project."""
