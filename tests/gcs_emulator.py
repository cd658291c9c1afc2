"""A real Cloud Storage emulator on 127.0.0.1 (``gcp-storage-emulator``, in this process) with
every client bertjax uses pointed at it: gcsfs (etils.epath), tensorstore (Orbax), the
google-cloud-storage client (tensorboardX) and array_record's C++ reader (grain). Facts and the
emulator's gaps: ``shared/reference/cloud-tpu-and-gcs.md`` section 2.

The gaps that would bite a real run's code paths are patched here: the stock ``list`` handler
ignores ``startOffset``/``endOffset`` (tensorstore's prefix-scoped delete would then delete every
object in the bucket); ``moveTo`` is not routed (gcsfs retries the 501 for ~33 s); media reads
carry no ``x-goog-generation`` header and preconditions (``ifGenerationMatch`` /
``ifGenerationNotMatch``) are ignored, which makes tensorstore's OCDBT manifest updates fail now
and then with "Malformed StorageGeneration"."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from http import HTTPStatus
from typing import Iterator

BUCKET = "bertjax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(port: int) -> dict[str, str]:
  """The environment that points every client at the emulator (and keeps credential probes
  on loopback)."""
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "FSSPEC_GS_TOKEN": "anon", "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy", "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
      "GOOGLE_CLOUD_PROJECT": "bertjax-test", "NO_GCE_CHECK": "true",
      "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
      "GCE_METADATA_ROOT": "127.0.0.1:1",
  }


def _patch_emulator() -> None:
  from gcp_storage_emulator import server
  from gcp_storage_emulator.handlers import objects

  if getattr(server, "_bertjax_patched", False):
    return
  stock_ls = objects.ls

  def ls(request, response, storage, *args, **kwargs):
    stock_ls(request, response, storage, *args, **kwargs)
    start = (request.query.get("startOffset") or [None])[0]
    end = (request.query.get("endOffset") or [None])[0]
    if not (start or end) or not response._content:
      return
    body = json.loads(response._content)
    body["items"] = [o for o in body.get("items") or []
                     if (not start or o["name"] >= start) and (not end or o["name"] < end)]
    response._content = json.dumps(body)

  def move(request, response, storage, *args, **kwargs):
    p = request.params
    try:
      dest = objects._copy(request.base_url, storage, p["bucket_name"], p["object_id"],
                           p["bucket_name"], p["dest_object_id"])
      storage.delete_file(p["bucket_name"], p["object_id"])
      response.json(dest)
    except objects.NotFound:
      response.status = HTTPStatus.NOT_FOUND

  def generation(request, storage, name_key="object_id"):
    p = request.params
    name = p.get(name_key) or (request.query.get("name") or [None])[0]
    try:
      return storage.get_file_obj(p["bucket_name"], name)["generation"]
    except (objects.NotFound, KeyError, TypeError):
      return None

  def preconditions_hold(request, response, current) -> bool:
    """``ifGenerationMatch`` (0: must not exist) / ``ifGenerationNotMatch``, as GCS has them."""
    match = (request.query.get("ifGenerationMatch") or [None])[0]
    not_match = (request.query.get("ifGenerationNotMatch") or [None])[0]
    if match is not None and match != (current or "0"):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return False
    if not_match is not None and current is not None and not_match == current:
      response.status = HTTPStatus.NOT_MODIFIED
      response["x-goog-generation"] = current
      return False
    return True

  stock_download, stock_insert = objects.download, objects.insert

  def download(request, response, storage, *args, **kwargs):
    current = generation(request, storage)
    if not preconditions_hold(request, response, current):
      return
    stock_download(request, response, storage, *args, **kwargs)
    if current is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      response["x-goog-generation"] = current  # tensorstore reads an object's generation here

  def insert(request, response, storage, *args, **kwargs):
    named = request.query.get("name")  # a multipart upload names its object in the body: as-is
    if not named or preconditions_hold(request, response, generation(request, storage)):
      stock_insert(request, response, storage, *args, **kwargs)

  objects.download, objects.insert = download, insert  # also looked up by name
  swap = {objects.ls: ls, stock_download: download, stock_insert: insert}
  handlers = []
  for regex, table in server.HANDLERS:
    handlers.append((regex, {m: swap.get(h, h) for m, h in table.items()}))
  for prefix in (server.settings.API_ENDPOINT, ""):
    handlers.insert(0, (rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                        rf"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {server.POST: move}))
  server.HANDLERS = tuple(handlers)
  server._bertjax_patched = True


@contextlib.contextmanager
def gcs_emulator() -> Iterator[str]:
  """Start the emulator with the bucket ``BUCKET``, point this process's clients (and the
  subprocesses it starts) at it; yield ``gs://BUCKET``. Stopped and the environment restored
  on exit."""
  from gcp_storage_emulator.server import create_server

  _patch_emulator()
  port = _free_port()
  env = client_env(port)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  # a client that hangs up early (a probe, a cancelled read) is not a test failure
  server._api._httpd.handle_error = lambda *args: None
  try:
    yield f"gs://{BUCKET}"
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
