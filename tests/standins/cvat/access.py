"""Who may read or change a task: a small copy of CVAT's IAM rules (iam/rules/tasks.rego).

- A user with the ``admin`` privilege may do everything.
- The task's owner and assignee may read and change it and all its jobs; the
  assignee of a job may read the task and read and change that job.
- In the task's organisation, ``owner`` and ``maintainer`` may read and change
  every task, ``supervisor`` may read them, ``worker`` only what it is assigned.

CVAT finds the object first and checks the rules after (``get_object`` then
``check_object_permissions``), so a task the user may not see is 403, not 404;
lists leave such tasks out.
"""

from __future__ import annotations

from .model import Job, Task, User

#: The body CVAT (Django REST framework) answers with a 403.
DENIED = "You do not have permission to perform this action."

_READERS = ("owner", "maintainer", "supervisor")
_WRITERS = ("owner", "maintainer")


def may_read(user: User, task: Task) -> bool:
    if _staff(user, task) or _org_role(user, task) in _READERS:
        return True
    return any(job.assignee is user for job in task.all_jobs)


def may_change(user: User, task: Task) -> bool:
    return _staff(user, task) or _org_role(user, task) in _WRITERS


def may_read_job(user: User, task: Task, job: Job) -> bool:
    return _staff(user, task) or _org_role(user, task) in _READERS or job.assignee is user


def may_change_job(user: User, task: Task, job: Job) -> bool:
    return may_change(user, task) or job.assignee is user


def _staff(user: User, task: Task) -> bool:
    return user.privilege == "admin" or task.owner is user or task.assignee is user


def _org_role(user: User, task: Task) -> str | None:
    if task.organization is None:
        return None
    return user.organizations.get(task.organization)
