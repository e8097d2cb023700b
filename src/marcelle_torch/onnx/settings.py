"""The export's defaults, in a module light enough for the CLI to import."""

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_MAX_MB = 20.0  # a bundle over this is downloaded by every visitor: warned about
