"""edgebench coordinator: fleet, dispatch, store, reports."""
