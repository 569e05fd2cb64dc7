"""The configuration: schema, recipes, composition of conf/, paths and run keys."""
