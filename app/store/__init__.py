"""The store: schema, engine, migrations, bulk loading and publishing."""
