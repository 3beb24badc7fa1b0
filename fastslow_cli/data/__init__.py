"""Caption files and captions matched to stored items."""
