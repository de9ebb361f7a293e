"""The wire: conversion between protobuf messages (``schedkit.v1``) and domain types, and
what both ends of a call agree on (headers, credentials files, the template cache)."""
