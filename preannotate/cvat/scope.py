"""Whether a caller may name a CVAT task: its token's CVAT projects and organisations.

A token in the tokens file may list ``cvat_projects`` and ``cvat_organizations``
(``preannotate.auth.CvatScope``). Before a service exports a task or writes
shapes into it for such a caller, ``check_task`` asks CVAT where the task lies
(``GET /api/tasks/{id}``, and ``GET /api/organizations/{id}`` for the slug of
its organisation): CVAT decides access by the task's own organisation, not by
the ``X-Organization`` a request sends, so the request's organisation proves
nothing. A task outside the token's projects or organisations, or in a personal
workspace when the token lists organisations, is ``PermissionDenied``; nothing
has been read or written by then. A limited token may not name a ``file://``
path either (it is no CVAT task). A token with no such keys may name every
task the service's own CVAT token reaches.
"""

from __future__ import annotations

from typing import Any

from preannotate.auth import Access
from preannotate.cvat.client import connect
from preannotate.cvat.refs import is_file_ref
from preannotate.cvat.settings import CvatSettings
from preannotate.errors import PermissionDenied, Unavailable
from preannotate.v1 import common_pb2


async def check_task(access: Access, ref: common_pb2.CvatRef, settings: CvatSettings) -> None:
    """Refuse (``PermissionDenied``) a task ``access`` may not name; see the module doc."""
    scope = access.cvat
    if not scope.limited:
        return
    if is_file_ref(ref.url):
        raise PermissionDenied(
            f"the token of {access.caller!r} is limited to CVAT projects or organisations; "
            "a file:// URL is not a CVAT task it may name"
        )
    async with connect(settings, ref) as client:
        task = await client.task(ref.task_id)
        if not isinstance(task, dict):
            raise Unavailable(f"CVAT answered GET /api/tasks/{ref.task_id} with no task")
        if scope.projects is not None:
            project = task.get("project_id")
            if project not in scope.projects:
                where = f"project {project}" if project else "no project"
                raise PermissionDenied(
                    f"CVAT task {ref.task_id} is in {where}; the token of {access.caller!r} "
                    f"may name tasks of CVAT projects {sorted(scope.projects)} only"
                )
        if scope.organizations is not None:
            slug = await _organization_slug(client, task.get("organization"))
            if slug not in scope.organizations:
                where = f"organisation {slug!r}" if slug else "a personal workspace"
                raise PermissionDenied(
                    f"CVAT task {ref.task_id} is in {where}; the token of {access.caller!r} "
                    f"may name tasks of CVAT organisations {sorted(scope.organizations)} only"
                )


async def _organization_slug(client: Any, organization: object) -> str:
    """The slug of the organisation CVAT gives a task by id ('' for none)."""
    if not isinstance(organization, int) or isinstance(organization, bool):
        return ""
    found = await client.request("GET", f"/api/organizations/{organization}")
    slug = found.get("slug") if isinstance(found, dict) else None
    if not isinstance(slug, str) or not slug:
        raise Unavailable(f"CVAT answered GET /api/organizations/{organization} with no slug")
    return slug
