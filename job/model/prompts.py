"""Driving-scene text prompts: the kind of query perception engineers type into a text search.

Their text-tower vectors (``index/text_queries.npy``, written at the end of embedding) are the queries that tune and
measure the text-query index. Text vectors do not lie among the image vectors they are searched against (CLIP's
modality gap), and a graph or IVF index tuned with image vectors as queries reaches a lower recall on them.
"""
from __future__ import annotations

SUBJECTS: tuple[str, ...] = (
    "a pedestrian crossing the street", "a cyclist in the bike lane", "a motorcycle", "a bus at a bus stop",
    "a truck", "a construction vehicle", "a trailer", "traffic cones", "a road barrier", "parked cars",
    "an ambulance", "a police car", "a traffic light", "a crosswalk", "an intersection", "a highway",
    "a parking lot", "a construction zone", "a roundabout", "a narrow street", "a road at night", "a rainy road",
    "a wet road with reflections", "heavy traffic", "an empty road", "trees along the road", "tall city buildings",
    "a person pushing a stroller", "a dog on the sidewalk", "children on the sidewalk", "a car turning left",
    "sun glare on the windshield",
)
TEMPLATES: tuple[str, ...] = ("a photo of {}.", "a dashcam image of {}.", "{}")


def prompts() -> list[str]:
    """Every subject in every template: 96 prompts, always in the same order."""
    return [t.format(s) for s in SUBJECTS for t in TEMPLATES]
