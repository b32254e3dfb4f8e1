from django.urls import path

from . import views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("v1/messages", views.messages),
    path("v1/models", views.models),
    path("v1/usage", views.usage),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
]
