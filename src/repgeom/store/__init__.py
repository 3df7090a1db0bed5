"""The zarr activation store: one store per run, one group per `{model}/{condition}` (layout in `layout.py`)."""
from repgeom.store.layout import StoreError, prompt_set_hash
from repgeom.store.reading import group_attrs, n_layers, read_layer, read_letter_lens, read_token_sample

__all__ = ["StoreError", "group_attrs", "n_layers", "prompt_set_hash", "read_layer", "read_letter_lens",
           "read_token_sample"]
