"""One router per concern: ``predict`` (images in, labels out), ``oip`` (Open Inference Protocol
v2 tensors), ``ops`` (health, readiness, model facts, Prometheus metrics)."""
