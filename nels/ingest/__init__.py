"""Ingest, as a pipeline visible in its file names: reader (sources -> local files) -> mapper
(decode, segment, encode) -> writer (one transaction per clip) -> runner (orders the stages, retries,
progress). A distributed runner can replace `runner.SequentialRunner` without touching the stages."""
