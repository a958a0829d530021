"""PromptKD (Li et al., CVPR 2024): a prompted teacher's predictions distilled into a prompted student on unlabeled
images of the target domain; the teacher's text features are stored in the student's prompt file."""

from vlprompt.methods.promptkd.config import PromptKDConfig
from vlprompt.methods.promptkd.model import PromptKD
from vlprompt.methods.registry import Capabilities, register_method

# modifies_encoders: the learned projector (and the vision prompts) sit on the image side, so images are encoded
# every step (also with n_ctx_vision 0); transductive: trained on all classes' unlabeled images (module docstring).
register_method("promptkd", PromptKDConfig, PromptKD, prepare="vlprompt.engine.teacher:prepare_teacher",
                capabilities=Capabilities(supervision="none", modifies_encoders=True, transductive=True))

__all__ = ["PromptKD", "PromptKDConfig"]
