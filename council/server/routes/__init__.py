"""The API's routes, one module per concern; each handler validates, authorises, calls one object, answers."""
