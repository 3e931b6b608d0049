"""The HTTP routes: detection and segmentation (multipart or JSON), the Hugging Face
zero-shot-object-detection route, health, readiness, metrics, info and the web page."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from gdino.serve.inputs import decode_base64
from gdino.serve.problems import Problem, problem_body
from gdino.serve.schemas import DetectForm, DetectJSON, HFDetection, HFRequest
from gdino.serve.service import Service

STATIC = resources.files("gdino.serve") / "static"

router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


def _detect_body_doc() -> dict[str, Any]:
    form = DetectForm.model_json_schema()
    form["properties"] = {"image": {"type": "string", "format": "binary"}, **form["properties"]}
    form["required"] = ["image"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": DetectJSON.model_json_schema()},
                "multipart/form-data": {"schema": form},
            },
        }
    }


async def _read_detect(request: Request, max_bytes: int) -> tuple[bytes, str, DetectJSON | DetectForm]:
    """The image bytes, its name and the options of a multipart or JSON request."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=32)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise Problem(422, "multipart request without an 'image' file field")
        data = await upload.read()
        fields: dict[str, Any] = {}
        for key in form.keys():
            if key == "image":
                continue
            values = [v for v in form.getlist(key) if isinstance(v, str)]
            if key == "classes":
                fields[key] = [n.strip() for v in values for n in v.split(",")]
            else:
                fields[key] = values[-1] if values else None
        parsed: DetectJSON | DetectForm = DetectForm.model_validate(fields)
        return data, parsed.name or upload.filename or "upload", parsed
    if ctype.startswith("application/json"):
        parsed = DetectJSON.model_validate_json(await request.body())
        return decode_base64(parsed.image, max_bytes), parsed.name or "image", parsed
    raise Problem(415, "send multipart/form-data (an 'image' file) or application/json (base64 'image')")


async def _detect(request: Request, segment: bool) -> dict[str, Any]:
    service = _service(request)
    data, name, fields = await _read_detect(request, service.config.max_body_bytes)
    prompt, opts, dets = await service.detect(data, name, fields, segment)
    return service.document(prompt, fields.prompt, opts, dets, segment)


@router.post(
    "/v1/detect", summary="Detect what a prompt names (the JSON of `gdino detect`)", openapi_extra=_detect_body_doc()
)
async def detect(request: Request) -> dict[str, Any]:
    return await _detect(request, segment=False)


@router.post("/v1/segment", summary="Detect, then mask every box (COCO RLE masks)", openapi_extra=_detect_body_doc())
async def segment(request: Request) -> dict[str, Any]:
    return await _detect(request, segment=True)


@router.post("/", summary="Hugging Face zero-shot-object-detection task", response_model=list[HFDetection])
@router.post("/v1/zero-shot-object-detection", summary="The same as POST /", response_model=list[HFDetection])
async def zero_shot(body: HFRequest, request: Request) -> list[dict[str, Any]]:
    service = _service(request)
    labels = body.parameters.candidate_labels
    classes = [n.strip() for n in labels.split(",")] if isinstance(labels, str) else labels
    fields = DetectForm(classes=classes, box_threshold=body.parameters.threshold, max_detections=body.parameters.top_k)
    data = decode_base64(body.inputs, service.config.max_body_bytes)
    _, _, dets = await service.detect(data, "inputs", fields)
    boxes = dets.xyxy.round().int().tolist()
    return [
        {
            "label": dets.labels[i],
            "score": round(float(dets.scores[i]), 4),
            "box": {"xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]},
        }
        for i, b in enumerate(boxes)
    ]


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and warmed up")
async def readyz(request: Request) -> JSONResponse:
    service = _service(request)
    if service.ready:
        return JSONResponse({"status": "ready"})
    status = "failed" if service.failure else "loading"
    body = {**problem_body(503, service.failure or "the model is loading"), "state": status}
    return JSONResponse(body, status_code=503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    service = _service(request)
    if service.batcher is not None:
        service.metrics.queue_depth.set(service.batcher.depth)
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/info", summary="Model, defaults, batching and limits")
async def info(request: Request) -> dict[str, Any]:
    return _service(request).info()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


def validation_problem(exc: ValidationError | Any) -> JSONResponse:
    """422 with a one-line summary first and pydantic's details after."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid request"))
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return JSONResponse({**problem_body(422, message), "detail": details}, status_code=422)
