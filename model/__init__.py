from model.config import GPTConfig, model_preset  # noqa: F401
from model.gpt import GPT  # noqa: F401
