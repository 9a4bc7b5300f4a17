from vidqa.errors import VidqaError

__version__ = "0.1.0"
__all__ = ["VidqaError", "__version__"]
