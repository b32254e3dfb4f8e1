"""Reads on billing data."""

from datetime import datetime

from .models import ModelPrice


def price_in_force(*, model_id: int, at: datetime) -> ModelPrice | None:
    return ModelPrice.objects.filter(model_id=model_id, effective_from__lte=at).order_by("-effective_from").first()
