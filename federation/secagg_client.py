"""The city's side of secure aggregation (SecAgg+).

Flower 1.42's ``SecAggPlusWorkflow`` speaks the legacy message format. Its
masked-vector stage sends a legacy ``FitIns`` and expects the handler inside
``secaggplus_mod`` to return a legacy ``FitRes``. So under SecAgg+ the city trains
inside a ``NumPyClient.fit``, and ``secaggplus_mod`` masks the result: the reply
carries the masked vector, the row count and the metrics, and the mod clears the
plain weights from it before it leaves the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client import NumPyClient
from flwr.client.message_handler.message_handler import (
    handle_legacy_message_from_msgtype,
)
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.utils import make_ffn
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

Scalar = bool | bytes | float | int | str
# fit(context, global weights, config) -> (local weights, rows, metrics)
FitFunction = Callable[
    [Context, list[np.ndarray], dict[str, Scalar]],
    tuple[list[np.ndarray], int, dict[str, Scalar]],
]


def is_secagg_message(message: Message) -> bool:
    """Return whether ``message`` is a stage of the SecAgg+ protocol."""
    return (
        message.metadata.message_type == MessageType.TRAIN
        and RECORD_KEY_CONFIGS in message.content.config_records
    )


def make_secagg_train(fit: FitFunction) -> ClientAppCallable:
    """Return a train handler for SecAgg+ stages that trains with ``fit``."""

    def client_fn(context: Context) -> object:
        return _CityClient(fit, context).to_client()

    def legacy_train(message: Message, context: Context) -> Message:
        return handle_legacy_message_from_msgtype(client_fn, message, context)

    return make_ffn(legacy_train, [secaggplus_mod])


class _CityClient(NumPyClient):
    """A NumPyClient whose ``fit`` is the city's local training."""

    def __init__(self, fit: FitFunction, city_context: Context) -> None:
        self._fit = fit
        self._city_context = city_context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        return self._fit(self._city_context, parameters, config)
