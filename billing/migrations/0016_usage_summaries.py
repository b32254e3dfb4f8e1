"""Daily summaries of the rollups (UsageTenantDay, UsageModelDay) and the marker of their day.

No data is copied here: days rolled up before this migration keep `summarized_at` NULL, the
reports read them from their rollups as before, and the next rollup run (beat, or
`manage.py rollup_usage`) builds their summaries from the rollups, one day per transaction
(billing/services/rollups.py `usage_summarize_day`). A migration doing it would hold every
day's lock for the whole history in one transaction, and could not cover a day that a worker
still running the older code rolls up after it.
"""

import django.db.models.deletion
import django.db.models.functions.comparison
from decimal import Decimal
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0015_usage_partitioned_by_month'),
        ('tenants', '0011_audit_trail'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerollupday',
            name='summarized_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='UsageModelDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('model', models.CharField(max_length=100)),
                ('endpoint', models.CharField(choices=[('chat', '/v1/chat/completions'), ('messages', '/v1/messages'), ('embeddings', '/v1/embeddings'), ('responses', '/v1/responses')], max_length=16)),
                ('status_code', models.PositiveSmallIntegerField()),
                ('error_type', models.CharField(blank=True, max_length=64)),
                ('cache_hit', models.BooleanField(default=False)),
                ('requests', models.PositiveBigIntegerField(default=0)),
                ('input_tokens', models.PositiveBigIntegerField(default=0)),
                ('cached_input_tokens', models.PositiveBigIntegerField(default=0)),
                ('cache_write_tokens', models.PositiveBigIntegerField(default=0)),
                ('cache_write_1h_tokens', models.PositiveBigIntegerField(default=0)),
                ('output_tokens', models.PositiveBigIntegerField(default=0)),
                ('cost', models.DecimalField(decimal_places=12, default=Decimal('0'), max_digits=28)),
                ('lat_lt_50', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_100', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_200', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_300', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_500', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_750', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_1000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_1500', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_2000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_3000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_5000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_10000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_20000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_30000', models.PositiveBigIntegerField(default=0)),
                ('lat_lt_60000', models.PositiveBigIntegerField(default=0)),
                ('lat_ge_60000', models.PositiveBigIntegerField(default=0)),
                ('price', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='billing.modelprice')),
            ],
            options={
                'constraints': [models.UniqueConstraint(models.F('day'), models.F('model'), models.F('endpoint'), models.F('status_code'), models.F('error_type'), models.F('cache_hit'), django.db.models.functions.comparison.Coalesce(models.F('price'), models.Value(0)), name='modelday_one_row_per_key')],
            },
        ),
        migrations.CreateModel(
            name='UsageTenantDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('requests', models.PositiveBigIntegerField(default=0)),
                ('errors', models.PositiveBigIntegerField(default=0, help_text='Status >= 400 or an error type.')),
                ('cache_hits', models.PositiveBigIntegerField(default=0, help_text='Answered from the response cache.')),
                ('input_tokens', models.PositiveBigIntegerField(default=0)),
                ('output_tokens', models.PositiveBigIntegerField(default=0)),
                ('cost', models.DecimalField(decimal_places=12, default=Decimal('0'), max_digits=28)),
                ('project', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='tenants.project')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenants.tenant')),
            ],
            options={
                'indexes': [models.Index(fields=['tenant', 'day'], name='tenantday_tenant_day')],
                'constraints': [models.UniqueConstraint(models.F('day'), models.F('tenant'), django.db.models.functions.comparison.Coalesce(models.F('project'), models.Value(0)), name='tenantday_one_row_per_key')],
            },
        ),
    ]
