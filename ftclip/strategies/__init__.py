"""Strategies attach learnable pieces to a Backbone: prompts, LoRA adapters, antonym prompts, heads."""
