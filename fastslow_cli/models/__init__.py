"""Native retrieval models: `fast` (dual encoder) and `slow` (bidirectional captioning with
cross-attention), their building blocks (`layers`) and checkpoint folders (`checkpoint`).

Importing this package imports nothing heavy; import the submodules (they need torch).
"""
