from mixdiff.cli import app

app()
