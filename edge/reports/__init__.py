"""Lab reports of a counted slide, read from the slide store: PDF, FHIR R4, HL7 v2.5.1 and CSV.

``content`` gathers what every format says (the signed report, or a preliminary one from the
reviewed cells); each format module turns that into bytes; ``lis`` delivers HL7 messages to the
lab's information system over MLLP (or into a drop folder) through a durable outbox.
"""
