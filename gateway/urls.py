from django.urls import path, re_path

from . import api, keys_api, models_api, views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("v1/messages", views.messages),
    path("v1/messages/count_tokens", views.count_tokens),
    path("v1/embeddings", views.embeddings),
    path("v1/responses", views.responses_create),
    path("v1/responses/<str:response_id>", views.response_detail),
    path("v1/responses/<str:response_id>/input_items", views.response_input_items),
    path("v1/models", models_api.models_list),
    path("v1/models/<path:model_id>", models_api.model_retrieve),
    path("v1/usage", views.usage),
    path("v1/templates", api.TemplatesView.as_view()),
    path("v1/templates/<str:name>", api.TemplateView.as_view()),
    path("v1/templates/<str:name>/versions/<str:version>", api.TemplateVersionView.as_view()),
    path("v1/keys", keys_api.KeysView.as_view()),
    path("v1/keys/<str:key_id>", keys_api.KeyView.as_view()),
    path("v1/logs", api.LogsView.as_view()),
    path("v1/logs/<str:request_id>", api.LogView.as_view()),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("metrics", views.metrics),
    # Last: any other /v1/ path is a 404 in the OpenAI error shape, not Django's HTML page.
    re_path(r"^v1/", views.unknown_endpoint),
]
