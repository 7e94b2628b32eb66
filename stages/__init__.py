"""The numbered stages. The registry in provision.stage discovers every sNN_<intent>.py here."""
