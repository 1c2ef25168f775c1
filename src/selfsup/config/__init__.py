"""Typed configuration from ``params.yaml`` and ``presets/``: one section per stage, loaded strictly (``load``), the
sections grouped by area (``text``, ``vision``, ``ops``; ``base`` holds what they share)."""

from selfsup.config.base import ConfigError, TrainLoopConfig, option
from selfsup.config.load import (Config, apply_override, config_from_dict, config_to_dict, describe_keys, load_config,
                                 set_path)
from selfsup.config.ops import (EMBEDDER_GATE_METRICS, EMBEDDER_TASK, IMAGE_GATE_METRICS, IMAGE_TASK, BatchRules, EmbedderGate, GateConfig, ImageGate, MonitorConfig,
                                OrchestrationConfig, RouteConfig, ServeConfig, TaskGate, TrackingConfig)
from selfsup.config.text import (EMBEDDER_INDEXES, ClassicalConfig, EmbedderExportConfig, RetrievalConfig, SimCSEConfig, DataConfig, LabelEfficiencyConfig, SelfTrainingConfig, ExportConfig, FinetuneConfig, FinetuneTaskConfig, ModelConfig, PretrainConfig,
                                 TableRules, TaskData, TokenizerConfig, ValidateConfig)
from selfsup.config.vision import (BACKBONES, SSL_METHODS, AugmentConfig, ImageRules, SSLEvaluateConfig, SSLExportConfig,
                                   SSLPretrainConfig, VisionConfig, VisionDataConfig)

__all__ = ["ConfigError", "option", "TaskData", "DataConfig", "TableRules", "ValidateConfig", "TokenizerConfig", "ModelConfig", "TrainLoopConfig", "PretrainConfig", "FinetuneTaskConfig", "FinetuneConfig", "ClassicalConfig", "RetrievalConfig", "EmbedderExportConfig", "EMBEDDER_INDEXES", "SimCSEConfig", "LabelEfficiencyConfig", "SelfTrainingConfig", "ExportConfig", "TrackingConfig", "SSL_METHODS", "BACKBONES", "VisionDataConfig", "ImageRules", "AugmentConfig", "SSLPretrainConfig", "SSLEvaluateConfig", "SSLExportConfig", "VisionConfig", "TaskGate", "IMAGE_TASK", "EMBEDDER_TASK", "EMBEDDER_GATE_METRICS", "EmbedderGate", "IMAGE_GATE_METRICS", "ImageGate", "GateConfig", "BatchRules", "MonitorConfig", "RouteConfig", "OrchestrationConfig", "ServeConfig", "Config", "set_path", "apply_override", "config_from_dict", "load_config", "config_to_dict", "describe_keys"]
