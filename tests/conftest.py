# Import the package before any test touches JAX, so its XLA CPU settings apply to every test.
import purejaxppo  # noqa: F401
