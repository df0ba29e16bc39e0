"""The registry's schema as SQLAlchemy 2.0 typed models.

Metadata only: weight files live in the blob store and are referenced by sha256.
Every relationship is lazy="raise" so a query that forgets to load what it uses
fails loudly instead of issuing one query per row.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, DateTime, Enum, Float, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Origin(str, enum.Enum):
    trained = "trained"      # fine-tuned by `loragen finetune`
    ingested = "ingested"    # brought in from a PEFT folder
    generated = "generated"  # produced by the generator
    # `refresh` kept an earlier version's adapter for a new version (it won on validation). Stored as a
    # VARCHAR(20) without a CHECK constraint (native_enum=False), so the new value needs no migration.
    carried_over = "carried_over"


class Blob(Base):
    """A file in the content-addressed store."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BaseModel(Base):
    """A named family of base weights (e.g. smollm2-135m); its versions hold the weights."""

    __tablename__ = "base_models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    architecture: Mapped[str] = mapped_column(String(100))  # transformers model_type, e.g. "llama"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[BaseVersion]] = relationship(
        back_populates="base", lazy="raise", order_by="BaseVersion.version", cascade="all, delete-orphan")


class BaseVersion(Base):
    """One set of weights of a base; v2, v3 … point to the version they evolved from."""

    __tablename__ = "base_versions"
    __table_args__ = (UniqueConstraint("base_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("base_versions.id"), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text)          # where it was added from, for people
    # The terms the weights come under, when a bundled model declares them (Gemma Terms of Use); versions evolved
    # from it keep the name. The terms' text is one of the files of the version added from the package.
    licence: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    gguf_file: Mapped[Optional[str]] = mapped_column(String(300), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)          # the transformers config
    linear_shapes: Mapped[dict[str, Any]] = mapped_column(JSON)   # module path -> [out, in]
    weights_digest: Mapped[str] = mapped_column(String(64))       # sha256 over the weight files
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    # The generator's base-model condition, computed from the weights once (loading a base is slow):
    # {"format": BASE_EMBED_FORMAT_VERSION, "values": [...]}; see Registry.cached_base_embedding.
    embedding: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    base: Mapped[BaseModel] = relationship(back_populates="versions", lazy="raise")
    files: Mapped[list[BaseVersionFile]] = relationship(lazy="raise", cascade="all, delete-orphan")

    @property
    def label(self) -> str:
        return f"{self.base.name}@v{self.version}"


class BaseVersionFile(Base):
    """A file of a base version's folder, stored as a blob (config, tokenizer, weights)."""

    __tablename__ = "base_version_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("base_versions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(500))
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))


class TaskRow(Base):
    """A registered task name (the suite's `loragen.tasks.Task` is the task's data, not this row)."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    descriptions: Mapped[list[TaskDescription]] = relationship(
        back_populates="task", lazy="raise", order_by="TaskDescription.id", cascade="all, delete-orphan")


class TaskDescription(Base):
    """A plain-language description of a task; the generator is conditioned on these."""

    __tablename__ = "task_descriptions"
    __table_args__ = (UniqueConstraint("task_id", "text"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)

    task: Mapped[TaskRow] = relationship(back_populates="descriptions", lazy="raise")


class Adapter(Base):
    """A LoRA adapter for one task on one base version, whatever made it.

    Indexed for a registry of 100k adapters: the list filters (task, base version) and order
    (created_at), and the foreign keys a delete has to check (replaces_id, the blob digests).
    """

    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)  # sha256(weights | task | base version)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    base_version_id: Mapped[int] = mapped_column(ForeignKey("base_versions.id"), index=True)
    origin: Mapped[Origin] = mapped_column(Enum(Origin, native_enum=False, length=20))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[list[str]] = mapped_column(JSON)
    num_parameters: Mapped[int] = mapped_column(BigInteger)
    # Indexed so deleting a blob row (gc) checks its references without scanning every adapter.
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    config_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    # How it was made: source folder for ingested, run/step for trained,
    # generator checkpoint + condition + seed for generated.
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    replaces_id: Mapped[Optional[int]] = mapped_column(ForeignKey("adapters.id"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)  # list order

    task: Mapped[TaskRow] = relationship(lazy="raise")
    base_version: Mapped[BaseVersion] = relationship(lazy="raise")


class EvalResult(Base):
    """One metric of one lm-eval run: an adapter on a task, or a base version zero-shot."""

    __tablename__ = "eval_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[Optional[int]] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), nullable=True,
                                                      index=True)
    base_version_id: Mapped[int] = mapped_column(ForeignKey("base_versions.id", ondelete="CASCADE"))
    task_name: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    num_examples: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(50), default="test")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # lm-eval version, limit, stderr
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GeneratorCheckpointRow(Base):
    """A trained generator: its two files live in the blob store."""

    __tablename__ = "generator_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the weights file
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    meta_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    step: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    tasks: Mapped[list[str]] = mapped_column(JSON)          # tasks it was trained on
    bases: Mapped[list[str]] = mapped_column(JSON)          # base versions it was trained on
    held_out: Mapped[list[str]] = mapped_column(JSON)       # tasks deliberately left out
    num_adapters: Mapped[int] = mapped_column(Integer)
    final_loss: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    # The adapters its output blends, in the order of its coefficients; empty for a raw-weights generator.
    library: Mapped[list[GeneratorLibraryEntry]] = relationship(
        lazy="raise", order_by="GeneratorLibraryEntry.position", cascade="all, delete-orphan")


class GeneratorLibraryEntry(Base):
    """One adapter of a generator's library, at its position among the generator's coefficients.

    It names the adapter by uid, not by row: `rm --force` of the adapter leaves the entry, so the generator
    fails in one line naming what it lost, and registering the same adapter again (same weights, task and
    base version: the same uid) mends it. The task, base and weights digest are the ones the generator was
    trained on; the digest is no foreign key, so gc may collect the file once the adapter is removed.
    """

    __tablename__ = "generator_library"
    __table_args__ = (UniqueConstraint("generator_id", "adapter_uid"),)  # an adapter enters a library once
    generator_id: Mapped[int] = mapped_column(ForeignKey("generator_checkpoints.id", ondelete="CASCADE"),
                                              primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_uid: Mapped[str] = mapped_column(String(64), index=True)  # indexed: `rm` asks which generators use it
    task: Mapped[str] = mapped_column(String(200))
    base: Mapped[str] = mapped_column(String(300))  # NAME@vN
    weights_sha256: Mapped[str] = mapped_column(String(64))
