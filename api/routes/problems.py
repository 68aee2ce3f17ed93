"""Documentation of the problem types the API answers with (RFC 9457 `type`)."""

from litestar import get
from litestar.params import FromPath

from api.problems import PROBLEMS, ApiError, problem_type


@get("/problems", tags=["problems"], summary="Every problem type")
async def list_problems() -> list[dict[str, object]]:
    return [
        {"type": problem_type(code), "status": status, "title": title}
        for code, (status, title) in PROBLEMS.items()
    ]


@get("/problems/{code:str}", tags=["problems"], summary="One problem type")
async def describe_problem(code: FromPath[str]) -> dict[str, object]:
    if code not in PROBLEMS:
        raise ApiError("not-found", f"no problem type {code!r}")
    status, title = PROBLEMS[code]
    return {"type": problem_type(code), "status": status, "title": title}
