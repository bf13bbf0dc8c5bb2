"""Device registrars (issue 17): the `manage_devices` permission and its group.

The `device registrar` group may register, re-point, remove and command devices (the
API and the admin). The `operator` group (jobs' migration of the same name) may see
devices in the admin: it is created here too if this migration runs first, so neither
depends on the other. Permission rows are created here because Django creates them only
after all migrations (post_migrate), which then finds them. Frozen: no imports.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

CUSTOM = [("manage_devices", "Can register, re-point, remove and command devices")]
VIEW_DEVICE = ("view_device", "Can view device")


def create_registrar_group(apps: Any, schema_editor: Any) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    db = schema_editor.connection.alias
    content_type, _ = ContentType.objects.using(db).get_or_create(
        app_label="devices", model="device"
    )

    def permission(codename: str, name: str) -> Any:
        found, _ = Permission.objects.using(db).get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
        return found

    manage = permission(*CUSTOM[0])
    view = permission(*VIEW_DEVICE)
    registrar, _ = Group.objects.using(db).get_or_create(name="device registrar")
    registrar.permissions.add(manage, view)
    operator, _ = Group.objects.using(db).get_or_create(name="operator")
    operator.permissions.add(view)


def remove_registrar_group(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name="device registrar"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("devices", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelOptions(name="device", options={"permissions": CUSTOM}),
        migrations.RunPython(create_registrar_group, remove_registrar_group),
    ]
