"""Pure validators shared by the admission webhook and the controllers.

Each returns a list of Problems: a field path, what is wrong and what is allowed. The
webhook joins all errors of one object into one denial and returns warnings as warnings;
the controllers put the same text in a Ready=False condition.
"""

from celery_operator.validation.common import (
    Problem,
    errors,
    format_problems,
    model_problems,
    warnings,
)

__all__ = ["Problem", "errors", "format_problems", "model_problems", "warnings"]
