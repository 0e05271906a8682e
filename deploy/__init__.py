"""Ray Serve application for AdapLeR models (installed as ``adapler_deploy``)."""

from adapler.artifacts import model_uri, registered_model_name

# What `adapler serve` and the application serve when no model is named: the registration the
# README's first command makes. Here, not in .schemas, so that the CLI's parser imports no pydantic.
DEFAULT_MODEL = model_uri(registered_model_name("demo"))
