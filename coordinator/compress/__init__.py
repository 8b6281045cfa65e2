"""Model compression: one module per technique, composed by recipes (see `recipe.py`, `base.py`)."""
