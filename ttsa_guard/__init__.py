"""ttsa-guard: a LangChain chat model that corrects its flagged answers at test time.

Flagged responses are corrected by Test-Time Safety Alignment (Saglam and
Kalogerias, arXiv 2604.26167): a zeroth-order search over the prompt's input
embeddings for a response the moderation scorer no longer flags.
"""

from ttsa_guard.audit import AUDIT_KEY, GuardAudit, GuardOutcome
from ttsa_guard.backends import Backend, EncodedPrompt, Generation, TransformersBackend
from ttsa_guard.chat_model import GuardedChatModel
from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig
from ttsa_guard.errors import (
    BudgetExceededError,
    ConfigurationError,
    CorrectionFailedError,
    InvalidInputError,
    ModelLoadError,
    ModerationAPIError,
    ModerationAuthenticationError,
    ModerationRateLimitError,
    ModerationTimeoutError,
    PromptTooLongError,
    ScorerError,
    TTSAGuardError,
)
from ttsa_guard.guard import Guard
from ttsa_guard.moderation import (
    BaseScorer,
    CachedScorer,
    ClassifierScorer,
    FunctionScorer,
    GuardModelScorer,
    ModerationResult,
    OpenAIModerationScorer,
    ProfanityScorer,
    Scorer,
    load_scorer,
)
from ttsa_guard.optimizer import OptimizationResult, ZerothOrderOptimizer

__all__ = [
    "AUDIT_KEY",
    "Backend",
    "BaseScorer",
    "BudgetExceededError",
    "CachedScorer",
    "ClassifierScorer",
    "ConfigurationError",
    "CorrectionFailedError",
    "EncodedPrompt",
    "FunctionScorer",
    "Generation",
    "GenerationConfig",
    "Guard",
    "GuardAudit",
    "GuardConfig",
    "GuardedChatModel",
    "GuardModelScorer",
    "GuardOutcome",
    "InvalidInputError",
    "load_scorer",
    "ModelLoadError",
    "ModerationAPIError",
    "ModerationAuthenticationError",
    "ModerationRateLimitError",
    "ModerationResult",
    "ModerationTimeoutError",
    "OpenAIModerationScorer",
    "OptimizationResult",
    "OptimizerConfig",
    "ProfanityScorer",
    "PromptTooLongError",
    "Scorer",
    "ScorerError",
    "TransformersBackend",
    "TTSAGuardError",
    "ZerothOrderOptimizer",
]

__version__ = "0.1.0"
