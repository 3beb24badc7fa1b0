"""Visual backbones and the extract stage (media -> feature rows)."""
