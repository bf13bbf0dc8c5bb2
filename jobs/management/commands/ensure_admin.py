"""`python manage.py ensure_admin`: create the first admin account if there is none."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand

from jobs.api.access import ensure_roles
from jobs.models import User


class Command(BaseCommand):
    help = "Create the role groups, and an 'admin' superuser when no superuser exists (password: ZYPHER_ADMIN_PASSWORD or generated)."

    def handle(self, *args: Any, **options: Any) -> None:
        ensure_roles()  # the operator and device registrar groups (docs/reliability.md)
        host = os.environ.get("HOST", "127.0.0.1")
        port = os.environ.get("PORT", "8080")
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(f"Admin: http://{host}:{port}/admin/ (existing account)")
            return
        password = os.environ.get("ZYPHER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", email="", password=password)
        source = "ZYPHER_ADMIN_PASSWORD" if os.environ.get("ZYPHER_ADMIN_PASSWORD") else "generated"
        self.stdout.write(
            f"Admin: http://{host}:{port}/admin/ user 'admin', password ({source}): {password}\n"
            "Set ZYPHER_ADMIN_PASSWORD before the first run to choose it."
        )
