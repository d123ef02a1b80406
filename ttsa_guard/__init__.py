"""ttsa-guard: a LangChain chat model that corrects its flagged responses at test time.

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
from ttsa_guard.responses import CORRECTION_EVENT
from ttsa_guard.runnables import MODERATION_EVENT, MODERATION_KEY, FlaggedContentError, ModerationRunnable
from ttsa_guard.tool_parsers import (
    HermesToolCallParser,
    JsonToolCallParser,
    ParsedResponse,
    ToolCallParser,
    get_tool_call_parser,
    register_tool_call_parser,
)

__all__ = [
    "AUDIT_KEY",
    "Backend",
    "BaseScorer",
    "BudgetExceededError",
    "CachedScorer",
    "ClassifierScorer",
    "ConfigurationError",
    "CORRECTION_EVENT",
    "CorrectionFailedError",
    "EncodedPrompt",
    "FlaggedContentError",
    "FunctionScorer",
    "Generation",
    "GenerationConfig",
    "get_tool_call_parser",
    "Guard",
    "GuardAudit",
    "GuardConfig",
    "GuardedChatModel",
    "GuardModelScorer",
    "GuardOutcome",
    "HermesToolCallParser",
    "InvalidInputError",
    "JsonToolCallParser",
    "load_scorer",
    "ModelLoadError",
    "MODERATION_EVENT",
    "MODERATION_KEY",
    "ModerationAPIError",
    "ModerationAuthenticationError",
    "ModerationRateLimitError",
    "ModerationResult",
    "ModerationRunnable",
    "ModerationTimeoutError",
    "OpenAIModerationScorer",
    "OptimizationResult",
    "OptimizerConfig",
    "ParsedResponse",
    "ProfanityScorer",
    "PromptTooLongError",
    "register_tool_call_parser",
    "Scorer",
    "ScorerError",
    "ToolCallParser",
    "ToolResultModerationMiddleware",
    "TransformersBackend",
    "TTSAGuardError",
    "ZerothOrderOptimizer",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The middleware needs the optional langchain package, so it is imported on first use.
    if name == "ToolResultModerationMiddleware":
        from ttsa_guard.middleware import ToolResultModerationMiddleware

        return ToolResultModerationMiddleware

    msg = f"module 'ttsa_guard' has no attribute {name!r}"
    raise AttributeError(msg)
