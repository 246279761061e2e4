"""Deployment settings of a model: which versions its default reference serves, by weight, and which
version shadows them (answers computed, compared and logged, never returned)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.orm import Session

from modelport.auth.principals import Principal
from modelport.errors import BadRequest, NotFound
from modelport.registry import audit
from modelport.registry.db import Database
from modelport.registry.models import visible_model
from modelport.registry.tables import Deployment, Model, utcnow
from modelport.registry.versions import load_version
from modelport.serving.devices import Device
from modelport.store.bundle import describe_validation_error


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)
    weight: float = Field(gt=0, le=1_000_000)


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=2**31 - 1)
    percent: float = Field(default=100.0, gt=0, le=100)
    """Share of the default reference's requests mirrored to the shadow version."""


class DeploymentConfig(BaseModel):
    """``routes`` split ``name`` (not ``name:3`` or ``name@alias``) between versions by weight;
    ``device`` is where every version of the model runs, whichever reference names it."""

    model_config = ConfigDict(extra="forbid")
    routes: list[Route] = Field(default_factory=list, max_length=16)
    shadow: Shadow | None = None
    device: Device = "cpu"

    @model_validator(mode="after")
    def _distinct(self) -> DeploymentConfig:
        versions = [r.version for r in self.routes]
        if len(set(versions)) != len(versions):
            raise ValueError("each version may appear once in routes")
        return self


def parse(raw: dict[str, Any]) -> DeploymentConfig:
    try:
        return DeploymentConfig.model_validate(raw)
    except ValidationError as exc:
        raise BadRequest(message=f"invalid deployment: {describe_validation_error(exc)}") from None


def config_of(session: Session, model: Model) -> DeploymentConfig | None:
    row = session.get(Deployment, model.id)
    return DeploymentConfig.model_validate(row.config) if row is not None else None


def set_deployment(
    db: Database, principal: Principal, model_name: str, config: DeploymentConfig, *, client: str | None = None
) -> DeploymentConfig:
    """Replace the deployment (writers); every named version must exist and be ready."""
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        named = [r.version for r in config.routes] + ([config.shadow.version] if config.shadow else [])
        for number in named:
            if load_version(s, model, number).status != "ready":
                raise BadRequest(message=f"version {number} of {model.name!r} is not ready to serve")
        row = s.get(Deployment, model.id)
        data = config.model_dump(mode="json")
        if row is None:
            s.add(Deployment(model_id=model.id, config=data, updated_by=principal.name))
        else:
            row.config, row.updated_by, row.updated_at = data, principal.name, utcnow()
        audit.record(s, actor=principal.name, action="deployment.set", target=model.name, details=data, client=client)
        return config


def get_deployment(db: Database, principal: Principal, model_name: str) -> DeploymentConfig:
    with db.read() as s:
        model, _ = visible_model(s, principal, model_name, "read")
        return config_of(s, model) or DeploymentConfig()


def delete_deployment(db: Database, principal: Principal, model_name: str, *, client: str | None = None) -> None:
    with db.write() as s:
        model, _ = visible_model(s, principal, model_name, "write")
        row = s.get(Deployment, model.id)
        if row is None:
            raise NotFound(message=f"model {model.name!r} has no deployment settings")
        s.delete(row)
        audit.record(s, actor=principal.name, action="deployment.delete", target=model.name, client=client)
