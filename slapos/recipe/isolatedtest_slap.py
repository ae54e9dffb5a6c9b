# -*- coding: utf-8 -*-
# Copyright (C) 2026 slapos.recipe.isolatedtest contributors
#
# This program is free software: you can redistribute it and/or modify it
# under the terms of the GNU General Public License version 3, or (at your
# option) any later version, as published by the Free Software Foundation.
"""Recipes for the instance of a software release: its parameters from the
SlapOS master, the node's isolation (probe and promise), and the connection
parameters it publishes.

SlapOS releases usually do the first and the last with slapos.cookbook's
slapconfiguration.serialised and publish.serialised. Those need SlapOS's
zc.buildout fork (upstream zc.buildout rejects their non-string option
values: "Option values must be strings") and slapos.core with some fifty eggs
in the release. These recipes make the same two calls slapos.slap makes
(registerComputerPartition, setComputerPartitionConnectionXml), with the
standard library, so that a release needs only this egg, on any zc.buildout.
"""
import json
import logging
import os
import re
import ssl
import subprocess
import sys
import xml.etree.ElementTree as etree

try:
    from shlex import quote
except ImportError:  # Python 2
    from pipes import quote
try:
    from urllib.parse import urlencode
    from urllib.request import Request, urlopen
except ImportError:  # Python 2
    from urllib import urlencode
    from urllib2 import Request, urlopen

from slapos.recipe import isolate_exec

SLAP_CONNECTION = 'slap-connection'


def user_error(message):
    """zc.buildout.UserError(message): the recipes' one-line errors
    (zc.buildout is imported here only: the SLAP client needs no buildout)."""
    import zc.buildout
    return zc.buildout.UserError(message)


# -- the master ----------------------------------------------------------------

class MasterError(Exception):
    pass


def unmarshal(xml):
    """xml_marshaller's XML (as slapos.slap's loads reads it) -> Python: the
    subset masters send. An object is its state dict."""
    root = etree.fromstring(xml)
    if root.tag != 'marshal' or len(root) != 1:
        raise MasterError('not xml_marshaller data')
    refs = {}

    def value(node):
        tag = node.tag
        if tag in ('string', 'unicode'):
            return node.text or ''
        if tag in ('int', 'long'):
            return int(node.text)
        if tag == 'float':
            return float(node.text)
        if tag == 'bool':
            return node.text == '1'
        if tag == 'none':
            return None
        if tag == 'reference':
            return refs.get(node.get('id'))
        if tag in ('list', 'tuple', 'set'):
            result = refs[node.get('id')] = [value(child) for child in node]
            return result
        if tag == 'dictionary':
            result = refs[node.get('id')] = {}
            children = list(node)
            for key, item in zip(children[::2], children[1::2]):
                result[value(key)] = value(item)
            return result
        if tag == 'object':  # (args tuple, state dict)
            state = [value(child) for child in node if child.tag == 'dictionary']
            result = refs[node.get('id')] = state[0] if state else {}
            return result
        raise MasterError('unexpected <%s> in xml_marshaller data' % tag)
    return value(root[0])


def marshal_dict(data):
    """A dict of strings -> xml_marshaller's XML (slapos.slap's dumps)."""
    root = etree.Element('marshal')
    dictionary = etree.SubElement(root, 'dictionary', id='i2')
    for key in sorted(data):
        for text in (key, data[key]):
            etree.SubElement(dictionary, 'string').text = text
    return etree.tostring(root)


class Master(object):
    """The SLAP calls of a partition, as slapos.slap makes them: plain HTTP
    (slapproxy), or HTTPS with the partition's key and certificate."""

    def __init__(self, connection):
        self.url = connection['server-url'].rstrip('/') + '/'
        self.computer = connection['computer-id']
        self.partition = connection['partition-id']
        self.context = None
        if self.url.startswith('https:'):
            self.context = ssl.create_default_context()
            key, cert = connection.get('key-file'), connection.get('cert-file')
            if key and cert:
                self.context.load_cert_chain(cert, key)

    def _call(self, request):
        try:
            kw = {'timeout': 60}
            if self.context is not None:
                kw['context'] = self.context
            response = urlopen(request, **kw)
            try:
                return response.read()
            finally:
                response.close()
        except (IOError, OSError, ValueError) as e:
            raise MasterError('%s: %s' % (request.get_full_url().split('?')[0], e))

    def parameters(self):
        """-> the partition's instance parameter dict"""
        data = self._call(Request(self.url + 'registerComputerPartition?' + urlencode(
            {'computer_reference': self.computer,
             'computer_partition_reference': self.partition})))
        partition = unmarshal(data)
        if not isinstance(partition, dict):
            raise MasterError('registerComputerPartition: unexpected answer')
        return partition.get('_parameter_dict') or {}

    def publish(self, connection_dict):
        self._call(Request(self.url + 'setComputerPartitionConnectionXml', data=urlencode({
            'computer_id': self.computer, 'computer_partition_id': self.partition,
            'connection_xml': marshal_dict(connection_dict)}).encode('ascii')))


def slap_connection(buildout):
    """slapgrid's [slap-connection] section, or None (deployed by hand)."""
    if SLAP_CONNECTION not in buildout.keys():
        return None
    section = buildout[SLAP_CONNECTION]
    return dict((key, section.get(key, '')) for key in
                ('server-url', 'computer-id', 'partition-id', 'key-file', 'cert-file'))


# -- instance parameters -----------------------------------------------------------

STRING_TYPES = (type(u''), str)  # Python 2: unicode and str
JSON_TYPES = {'string': STRING_TYPES, 'boolean': (bool,), 'integer': (int,),
              'number': (int, float)}


def check_parameter(name, value, schema):
    """Check value against its JSON schema (the subset release schemas use:
    type, enum, pattern, minimum, maximum) -> value as an option string.
    A string 'true'/'false' is accepted for a boolean, a numeric string for a
    number (slapos request --parameters sends strings)."""
    kind = schema.get('type', 'string')
    if kind == 'boolean' and value in ('true', 'false'):
        value = value == 'true'
    elif kind in ('integer', 'number') and isinstance(value, STRING_TYPES):
        try:
            value = int(value) if kind == 'integer' else float(value)
        except ValueError:
            pass
    types = JSON_TYPES.get(kind, (object,))
    if not isinstance(value, types) or (isinstance(value, bool) and kind != 'boolean'):
        raise user_error('instance parameter %s: %r is not a %s'
                                    % (name, value, kind))
    if 'enum' in schema and value not in schema['enum']:
        raise user_error('instance parameter %s: %r is not one of %s' % (
            name, value, ', '.join(json.dumps(v) for v in schema['enum'])))
    if 'pattern' in schema and not re.search(schema['pattern'], value):
        raise user_error('instance parameter %s: invalid value %r (%s)' % (
            name, value, schema.get('description') or 'pattern %s' % schema['pattern']))
    for bound, ok in (('minimum', lambda b: value >= b), ('maximum', lambda b: value <= b)):
        if bound in schema and not ok(schema[bound]):
            raise user_error('instance parameter %s: %r is not %s %s' % (
                name, value, '>=' if bound == 'minimum' else '<=', schema[bound]))
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


class Parameters(object):
    """The instance parameters, as options of this section: each parameter
    of the release's instance-input-schema.json, from the master (the
    partition's [slap-connection], as slapgrid writes it) or its default.
    Deployed by hand (no [slap-connection]), a parameter may be given as an
    option of the section, e.g. ``buildout instance-parameter:tmp-size=1g``.
    Every value is checked against the schema; an unknown parameter or a bad
    value stops buildout with one message naming the parameter.

    :param str schema: path of the instance input JSON schema (required)
    """

    def __init__(self, buildout, name, options):
        self.options = options
        path = options.get('schema', '').strip()
        if not path:
            raise user_error('schema: missing (required)')
        try:
            with open(path) as f:
                schema = json.load(f)
            properties = schema['properties']
        except (IOError, OSError, ValueError, KeyError, TypeError) as e:
            raise user_error('schema: cannot read %s: %s' % (path, e))
        # A parameter given by hand is an option of this section: any other
        # option (but buildout's own, _...) is a misspelled parameter.
        unknown = sorted(key for key in options.keys() if key not in properties and
                         key not in ('recipe', 'schema') and not key.startswith('_'))
        if unknown:
            raise user_error('instance parameter %s: unknown (the parameters are %s)'
                             % (unknown[0], ', '.join(sorted(properties))))
        given = dict((key, options[key]) for key in properties if key in options)
        connection = slap_connection(buildout)
        if connection is not None:
            try:
                given = Master(connection).parameters()
            except MasterError as e:
                raise user_error('instance parameters: %s' % e)
            if '_' in given:  # "serialisation": "json-in-xml"
                try:
                    given = json.loads(given['_'])
                except ValueError as e:
                    raise user_error('instance parameters: invalid JSON: %s' % e)
                if not isinstance(given, dict):
                    raise user_error('instance parameters: not a JSON object')
                unknown = sorted(set(given) - set(properties))
                if unknown and schema.get('additionalProperties') is False:
                    raise user_error('instance parameter %s: unknown (the parameters '
                                                'are %s)' % (unknown[0], ', '.join(sorted(properties))))
            else:  # xml: slapgrid's own keys (slap_*, timestamp, ip_list...) are mixed in
                given = dict((k, v) for k, v in given.items() if k in properties)
        for key, spec in sorted(properties.items()):
            value = given.get(key, spec.get('default'))
            if value is None:
                raise user_error('instance parameter %s: missing (no default)' % key)
            options[key] = check_parameter(key, value, spec)

    def install(self):
        return []

    update = install


# -- isolation on the node -----------------------------------------------------------

class Probe(object):
    """What isolation the node gives: `isolate-exec --probe`, run as the
    partition's user when buildout installs or updates the part.

    :param str userns: auto, require or off, as the wrapper recipes' option
    :param str promise: where to write a SlapOS promise (a legacy promise is
        an executable in etc/promise) that fails when userns is require and
        the probe fails (optional)
    :param str python: interpreter of the promise (default: buildout's own)

    Options set: ``result`` (the probe's line, e.g. "+userns -fuse (open
    /dev/fuse: Permission denied)"), ``available`` (true or false).
    """

    def __init__(self, buildout, name, options):
        from slapos.recipe.isolatedtest import read_absolute_path, read_choice
        self.buildout, self.name, self.options = buildout, name, options
        self.userns = read_choice(options, 'userns', ('auto', 'require', 'off'), 'auto')
        self.promise = read_absolute_path(options, 'promise')
        self.python = read_absolute_path(options, 'python') or sys.executable
        self.probe = isolate_exec.self_command(self.python) + ['--probe']
        proc = subprocess.Popen(self.probe, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate()
        line = out.decode('utf-8', 'replace').strip()
        if proc.returncode not in (0, 1) or not line:
            raise user_error('isolate-exec --probe failed (exit status %d): %s'
                             % (proc.returncode, err.decode('utf-8', 'replace').strip()))
        options['result'] = line
        options['available'] = 'true' if proc.returncode == 0 else 'false'

    def install(self):
        if not self.promise:
            return []
        from slapos.recipe.isolatedtest import write_file
        directory = os.path.dirname(self.promise)
        if not os.path.isdir(directory):
            os.makedirs(directory)
        if self.userns == 'require':
            check = ('%s || { echo "userns = require, and user namespaces do not work on '
                     'this node" >&2; exit 1; }' % ' '.join(quote(a) for a in self.probe))
        else:
            check = 'exit 0'
        text = ('#!/bin/sh\n# SlapOS promise: isolation of the test runs (userns = %s)\n%s\n'
                % (self.userns, check))
        write_file(self.promise, text, 0o755, logging.getLogger(self.name))
        return [self.promise]

    update = install


# -- connection parameters -------------------------------------------------------------

class Publish(object):
    """Publish this section's options (but recipe) as the partition's
    connection parameters, serialised as one JSON object under "_" (the
    "json-in-xml" serialisation of the release's software.cfg.json), at
    each install and update. Deployed by hand (no [slap-connection]), they
    are only logged.
    """

    def __init__(self, buildout, name, options):
        self.name, self.options = name, options
        self.connection = slap_connection(buildout)
        self.values = dict((key, value) for key, value in options.items()
                           if key != 'recipe' and not key.startswith('_'))

    def install(self):
        logger = logging.getLogger(self.name)
        if self.connection is None:
            logger.info('Connection parameters (not published: no [slap-connection]): %s',
                        json.dumps(self.values, sort_keys=True))
            return []
        try:
            Master(self.connection).publish({'_': json.dumps(self.values, sort_keys=True)})
        except MasterError as e:
            raise user_error('publish connection parameters: %s' % e)
        logger.info('Published: %s', json.dumps(self.values, sort_keys=True))
        return []

    update = install
