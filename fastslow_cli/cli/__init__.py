"""The command line: the Typer app, rendering and consoles. The only place that imports typer or rich."""
