"""Each attempt's device time (JobRun) and weights bounded to 0.001..1000 (issue 13).

Named 0009: the lead's 0008 lands first and this dependency moves onto it at merge.
Weights outside the range are clamped into it before the check constraint is added.
"""

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("jobs", "0007_lock_order"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("device_type", models.CharField(max_length=64)),
                ("device", models.CharField(blank=True, default="", max_length=128)),
                ("started_at", models.DateTimeField()),
                ("ended_at", models.DateTimeField()),
            ],
        ),
        migrations.RemoveConstraint(
            model_name="user",
            name="user_weight_positive",
        ),
        migrations.AlterField(
            model_name="user",
            name="weight",
            field=models.FloatField(
                default=1.0,
                help_text="Share of device time relative to others (0.001 to 1000).",
                validators=[
                    django.core.validators.MinValueValidator(0.001),
                    django.core.validators.MaxValueValidator(1000.0),
                ],
            ),
        ),
        migrations.RunSQL(
            "UPDATE jobs_user SET weight = CASE WHEN weight < 0.001 THEN 0.001 ELSE 1000.0 END "
            "WHERE weight < 0.001 OR weight > 1000.0",
            migrations.RunSQL.noop,
        ),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.CheckConstraint(
                condition=models.Q(("weight__gte", 0.001), ("weight__lte", 1000.0)),
                name="user_weight_range",
            ),
        ),
        migrations.AddField(
            model_name="jobrun",
            name="job",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="runs", to="jobs.job"
            ),
        ),
        migrations.AddField(
            model_name="jobrun",
            name="owner",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="runs",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddIndex(
            model_name="jobrun",
            index=models.Index(fields=["ended_at"], name="jobrun_ended_at"),
        ),
    ]
