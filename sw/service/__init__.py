"""The verifier as a network service: RATS-style challenge-response over HTTP, EAR results.

- :mod:`.api`: the one source of the API's paths, media types, limits and session ids, shared
  by the server and its client;
- :mod:`.ear`: attestation results as EAR (draft-ietf-rats-ear) JWTs signed ES256, the JWKS;
- :mod:`.keyfiles`: the EAR signing key and the admin token, owner-only files beside the
  registry (never in it);
- :mod:`.batch`: group commit: the requests that arrive while a batch commits go together;
- :mod:`.app`: the ASGI application (Starlette); :mod:`.openapi` its description;
- :mod:`.server`: ``mchsm verifier serve`` (uvicorn, several worker processes);
- :mod:`.client`: the HTTP client the demo, the CLI and the tests use.

``docs/verifier.md`` describes the API, the EAR claims, deployment and the trust model.
"""

from __future__ import annotations
