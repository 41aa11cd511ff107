"""From the venue's pushes to the actors: the evidence board they wait on, and the ingestor
that feeds it (and the Redis journal) batch by batch."""

from posguard.streams.ingestion.evidence import BoardStatistics, EvidenceBoard, newer_order
from posguard.streams.ingestion.ingestor import MAX_BATCH, EventCache, Ingestor, IngestStatistics

__all__ = ["MAX_BATCH", "BoardStatistics", "EventCache", "EvidenceBoard", "IngestStatistics", "Ingestor", "newer_order"]
