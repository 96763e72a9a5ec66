"""Item pipelines: matching (decides ``matched``, publishes events) and the outcomes writer."""
