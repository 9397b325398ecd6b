"""The cloud and edge services on Ray Serve (`pip install -e '.[ray]'`; `edensplit serve-ray`).

- `config`: the configuration file (configs/ray.yaml); needs no Ray.
- `deployments`: the Encoder and Interpolator deployments around the project's own apps.
- `router`: session affinity for the interpolator's replicas.
- `cluster`: start or join Ray, deploy both under /cloud and /edge on one HTTP proxy.

See docs/scaling.md (Ray Serve).
"""
