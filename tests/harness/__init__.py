"""Test harness for AdaCluster: tiny DiT checkpoints, a real ComfyUI server, API-prompt builders.

Test-only code; never imported by the shipped node pack.
"""
