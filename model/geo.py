"""Where things are: city codes, great-circle distances, and the propagation delay they give a link.

Delay from distance: light in fibre travels at c/n with n ≈ 1.47 (silica), ≈ 204 km per ms; the lab uses
200 km/ms. Fibre routes are longer than the great circle between their ends; ``route_factor`` (the
topology's ``settings.route_factor``, default 1.0: the great circle, a lower bound) stretches it. Only
propagation is modelled: no queueing, no serialisation (bandwidth does that), no router processing.
"""

from __future__ import annotations

import math

FIBRE_KM_PER_MS = 200.0
EARTH_RADIUS_KM = 6371.0

#: Airport-style codes of the design's PoP cities and of the other places topologies put routers and
#: clients (latitude, longitude in degrees).
CITIES: dict[str, tuple[float, float]] = {
    # North America
    "sjc": (37.36, -121.93), "sfo": (37.62, -122.38), "lax": (33.94, -118.41), "sea": (47.45, -122.31),
    "den": (39.86, -104.67), "dfw": (32.90, -97.04), "ord": (41.98, -87.90), "atl": (33.64, -84.43),
    "iad": (38.95, -77.46), "nyc": (40.71, -74.01), "mia": (25.79, -80.29), "yyz": (43.68, -79.63),
    # Europe
    "lhr": (51.47, -0.45), "ams": (52.31, 4.76), "fra": (50.04, 8.56), "cdg": (49.01, 2.55),
    "mad": (40.47, -3.57), "mxp": (45.63, 8.72), "waw": (52.17, 20.97), "arn": (59.65, 17.92),
    "dub": (53.43, -6.25), "vie": (48.11, 16.57),
    # Asia-Pacific
    "sin": (1.36, 103.99), "nrt": (35.77, 140.39), "hkg": (22.31, 113.91), "syd": (-33.95, 151.18),
    "icn": (37.46, 126.44), "bom": (19.09, 72.87), "tpe": (25.08, 121.23), "mel": (-37.67, 144.84),
    "kix": (34.43, 135.23), "per": (-31.94, 115.97),
}


def great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """The haversine distance between two (lat, lon) points, in km."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def propagation_ms(a: tuple[float, float], b: tuple[float, float], route_factor: float = 1.0) -> float:
    """One-way propagation delay (ms, to 0.01) between two points over fibre stretched by ``route_factor``."""
    return round(great_circle_km(a, b) * route_factor / FIBRE_KM_PER_MS, 2)


def where(location: str | tuple[float, float]) -> tuple[float, float]:
    """(lat, lon) of a city code or of a (lat, lon) pair; raises ValueError naming the known codes."""
    if isinstance(location, str):
        try:
            return CITIES[location]
        except KeyError:
            raise ValueError(f"unknown city code '{location}'; known: {', '.join(sorted(CITIES))} "
                             "(or give [latitude, longitude])") from None
    lat, lon = location
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"[{lat}, {lon}] is not a place: latitude −90..90, longitude −180..180")
    return (float(lat), float(lon))
