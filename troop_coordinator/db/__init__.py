"""The coordinator's database: models, engine and migrations."""
