"""Query -> results: the retrievers (models behind one interface) and the searcher."""
