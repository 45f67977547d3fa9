"""lathe: a Ray-native platform for adapting language models and putting them to work."""

__version__ = "0.1.0"
