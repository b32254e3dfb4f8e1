"""The tenant configuration file (`manage.py import_tenants` / `export_tenants`).

- `config.schema`: the format (its docstring is the contract) and validation;
- `config.apply`: import, an upsert in one transaction (or a dry run);
- `config.export`: the whole configuration in the import format.

Nothing is imported here: this is also a Django app's package, loaded before the models are.
"""
